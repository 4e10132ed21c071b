"""Data sets: finding, downloading (pooch, checksummed) and parsing the official files."""
