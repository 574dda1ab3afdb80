"""isthmus.edge_agent"""
