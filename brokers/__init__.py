"""Broker configurations: the topology files and the Mosquitto configuration generator."""
