"""isthmus.platform"""
