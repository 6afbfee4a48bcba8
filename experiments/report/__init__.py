"""Reports: runs collected, compared, tabulated and plotted into a page."""
