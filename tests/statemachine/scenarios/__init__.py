"""Scenario-test support: the Driver that applies commands and checks after each step."""
