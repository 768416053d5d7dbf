"""What bench/launch.py measures dlapp against, and how to set those peers up."""
