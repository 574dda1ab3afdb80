"""isthmus.partition"""
