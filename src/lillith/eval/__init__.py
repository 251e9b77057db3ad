"""lillith.eval: scoring against labelled corpora (NAB, SKAB) and the cross-validated protocol."""
