"""Bring-your-own-model example: see README.md in this folder."""
