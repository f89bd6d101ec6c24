"""A NoneBot2 project as a user writes it (the NoneBot tests and benchmark run it)."""
