"""isthmus.partition: where to split a model between an edge device and a site.

- `partition_graph`: exact DAG min-cut (DADS) on the "Partition input" graph of docs/spec.md.
- `ChainTable`: Edgent (exit + split under an SLO) and Neurosurgeon (fastest split) on chain models.
- `ModelPartitioner` / `compare_strategies`: a profiled zoo model on an (edge device, server) pair.
- `fill_splits`: SplitPoints for the geo planner; `export_partitions`: head/tail TorchScript files.
"""

from isthmus.partition.chain import ChainDecision, ChainPath, ChainTable
from isthmus.partition.compare import ModelPartitioner, compare_strategies
from isthmus.partition.graph import (GraphError, GraphPartition, PartitionGraph, graph_latency_ms, load_graph,
                                     parse_graph, partition_graph, transfer_ms)
from isthmus.partition.splits import export_partitions, fill_splits, split_modules, split_points

__all__ = ["ChainDecision", "ChainPath", "ChainTable", "ModelPartitioner", "compare_strategies", "GraphError",
           "GraphPartition", "PartitionGraph", "graph_latency_ms", "load_graph", "parse_graph", "partition_graph",
           "transfer_ms", "export_partitions", "fill_splits", "split_modules", "split_points"]
