"""Experiments and benchmarks behind the README's results.

report      machine/versions/git SHA, atomic JSON, Markdown, timing helpers
ladder      Performer vs Reformer twin at 6/12/24 layers (resumable)

The scripts in scripts/ are thin command lines over these modules.
"""
