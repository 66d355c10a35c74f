"""From finished trials to what a paper reports: the results database, tables with floors, intervals and paired
tests, statistics, the reference baselines, the forgetting report, and their printed and plotted forms."""
