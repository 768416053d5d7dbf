"""What bench/launch.py and bench/start_rate.py measure dlapp against, and how to set those
peers up."""
