"""AWS adapters: EC2 and Systems Manager fleet, DynamoDB run store, SQS queue, Secrets Manager."""
