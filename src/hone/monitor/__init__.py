"""After deployment: captured traffic and feedback (traffic.py), its daily health and input drift
(health.py, drift.py, watch.py), and the next dataset built from it (from_traffic.py)."""
