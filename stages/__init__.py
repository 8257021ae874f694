"""Stages and pipelines: chaining codellama-train runs through their exports."""
