"""The live view (``procnetmon --live``): a full-screen table that follows the
interval records of a sampling run.

``model`` keeps the rows, their history and the view's state (sort, filter,
pause, units, selection) from the records alone; ``layout`` turns that state
into the lines of one screen; ``screen`` draws them with curses and reads the
keys; ``sink`` is the run's Sink that feeds them. Only ``screen`` imports
curses, so everything else is tested without a terminal.
"""
