"""What the agent says about each frame: the detector, its sources of evidence and the alarm."""
