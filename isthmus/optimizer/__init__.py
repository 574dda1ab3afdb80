"""isthmus.optimizer"""
