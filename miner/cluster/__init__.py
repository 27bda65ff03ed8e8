"""Worker pools spread over several hosts (Ray); imported only when ``[cluster] backend = "ray"``."""
