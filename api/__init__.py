"""Nexus-AI Platform API: a control plane that builds, runs and observes AI agents."""

__version__ = "1.0.0"
