"""Synthetic demo content: invented patients, cases and generated photos (no real data)."""
