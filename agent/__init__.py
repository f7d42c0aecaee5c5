"""cctv-agent: a fixed camera turned into a compact, exact (or bounded-error) frame stream."""

__version__ = "0.1.0"
