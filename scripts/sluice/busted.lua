-- The busted config `sluice test` runs with: the folders come from its
-- command line, the paths and the LuaJIT host from its own flags.
return { default = {} }
