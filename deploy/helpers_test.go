package deploy_test

import "github.com/google/uuid"

func testUID() uuid.UUID { return uuid.Must(uuid.NewV7()) }
