"""SMPP 3.4: the ESME session, its gateway, and the PDU codec they share."""
