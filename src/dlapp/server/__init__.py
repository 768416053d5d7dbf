"""The dlapp server: REST API, scheduler loop and executor, in one process."""
