module eventfn.dev/client/go

go 1.19
