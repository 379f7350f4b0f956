/* A tiny C module for Lua 5.4, compiled by tests/test_require.py: a function
   and a userdata type, as real C modules (lfs, lpeg, cjson) have. */
#include "lua.h"
#include "lauxlib.h"

static int twice(lua_State *L) {
  lua_pushinteger(L, 2 * luaL_checkinteger(L, 1));
  return 1;
}

static int box(lua_State *L) {
  int n = (int)luaL_optinteger(L, 1, 7);
  int *p = (int *)lua_newuserdatauv(L, sizeof(int), 0);
  *p = n;
  luaL_setmetatable(L, "tiny.box");
  return 1;
}

int luaopen_tiny(lua_State *L) {
  luaL_newmetatable(L, "tiny.box");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, twice);
  lua_setfield(L, -2, "twice");
  lua_pushcfunction(L, box);
  lua_setfield(L, -2, "box");
  return 1;
}
