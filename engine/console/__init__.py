"""The browser console (issue 20): server-rendered pages served by the engine under /console/."""
