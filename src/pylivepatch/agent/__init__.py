"""The agent: the control socket of a target process (spec §9).

Import its parts directly (``agent.server``, ``agent.protocol``, ``agent.store``): the
command line uses the light ones without loading the engine.
"""
