"""The one-command demo: simulated camera → agent → Mosquitto → collector → archive, with a report."""
