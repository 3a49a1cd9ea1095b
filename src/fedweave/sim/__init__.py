"""Simulation: virtual clock and events, workers and executors, the engine."""
