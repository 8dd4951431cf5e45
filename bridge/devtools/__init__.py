"""Developer tools: the Pipedrive simulator, a fake Pipedrive, a loopback server for fakes."""
