"""isthmus.actors"""
