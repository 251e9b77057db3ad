"""lillith.agents: the online learner (model and scores); see docs/agent.md."""
