"""Proof under fire: several processes on one database, crashes, hostile HTTP, fuzzed parsers."""
