"""The worker program: claims jobs under a lease and runs each in a long-lived trainer process that holds the device."""
