"""scrapsort edge runtime: everything that runs next to the belt. Needs no torch."""
