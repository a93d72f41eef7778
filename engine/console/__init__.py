"""The browser console (issue 20): pages served by the engine under /console/."""
