"""Cluster-wide runs: find the node agents, run a tool on all of them at once, merge the results.

    discovery   which agents: `--agents` URLs, or the agent pods through the Kubernetes API
    client      one agent's REST API (bearer token), and the fan-out over all of them
    merge       node results -> one result: histograms summed, stacks merged, events interleaved
"""
