"""isthmus.placement"""
