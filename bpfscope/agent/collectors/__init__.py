"""Agent-side collectors for registered tools that do not declare one themselves.

`bpfscope.agent.metrics.available_collectors()` takes a tool's own `collector` first; for a tool
without one it looks for a module here named after the tool, exporting COLLECTOR. Once a tool's
module declares `collector = ...` itself, its module here is no longer used.
"""
