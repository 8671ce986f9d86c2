"""Source role: from the validated report to a published KOS, and keeping the DMP index true."""
