"""pytest plugin of cxr-robust (options, fixtures and the robustness grid) -- being written."""
