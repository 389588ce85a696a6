"""Reference applications (stcp_apps)."""
