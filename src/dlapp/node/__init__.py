"""What runs on a node for one container: the supervisor (stage in, run, stage out, logs) and
its GPU meter. The server reaches it only through the executor; what the two exchange is in
``dlapp.contract``."""
