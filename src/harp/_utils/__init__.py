"""Private helpers shared by every stage (atomic IO, hashing, seeding)."""
