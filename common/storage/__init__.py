"""Storage facts shared by xapi-init (start-up) and xapi-api (SR.scan, the scanning job)."""
