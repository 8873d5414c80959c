-- Echo: replies with the request content, unchanged.
return alaskaContext
