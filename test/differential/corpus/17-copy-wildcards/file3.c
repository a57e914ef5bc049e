c3
