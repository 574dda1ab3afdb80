"""isthmus.models"""
