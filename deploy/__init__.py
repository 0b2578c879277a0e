"""Deployable artefacts of Ash: the NATS access generator, env files, units, charts."""
