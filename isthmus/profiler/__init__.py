"""isthmus.profiler"""
